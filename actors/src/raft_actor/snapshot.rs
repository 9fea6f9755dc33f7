//! Snapshots on the RaftActor: taking one when the log has grown by `max_log_entries` since the
//! last (captured on the Raft loop, written out on a blocking thread through the StorageActor,
//! so appends and commits go on meanwhile), installing one a leader streamed to us, and handing
//! the current one to a PeerActor when raft-rs decides a follower needs it.

use std::{io, sync::Arc};

use kameo::{
    actor::ActorRef,
    error::SendError,
    message::{Context, Message},
    reply::DelegatedReply,
};
use raft::eraftpb::{Message as RaftMessage, SnapshotMetadata};
use tracing::{debug, info, warn};

use super::{
    actor::RaftActor,
    snapshots::{MAX_STAGED, restore_from, snapshot_meta},
};
use crate::{
    config::StorageSpawn,
    consistency::ApplyHash,
    error::{FatalError, ProposeError, SnapshotError, StorageError},
    events::ClusterEvent,
    membership::{Membership, SnapshotHeader, in_conf, write_snapshot_header},
    peer::{SnapshotOffer, SnapshotReceived, SnapshotSent},
    state_machine::{StateMachine, WriteSnapshot},
    storage::{
        CommitSnapshot, DiscardSnapshot, NewSnapshotId, SnapshotReader, SnapshotRecord,
        SnapshotWriter, StorageActor, WriteChunk,
    },
};

impl<S: StateMachine> RaftActor<S> {
    /// Takes a snapshot if the log has grown by `max_log_entries` since the last one.
    pub(super) fn maybe_snapshot(&mut self) {
        if self.applied >= self.snapshots.index() + self.config.max_log_entries {
            self.start_snapshot();
        }
    }

    /// Captures the state machine now and writes the capture out on a blocking thread.
    fn start_snapshot(&mut self) {
        if self.snapshots.taking || self.check_running().is_err() {
            return;
        }
        let index = self.applied;
        if index == 0 || index <= self.snapshots.index() {
            return;
        }
        let Some(term) = self.driver.term_at(index) else {
            return;
        };
        let purge = index.saturating_sub(self.config.snapshot_trailing_entries);
        let purge_to = (purge >= self.driver.first_index())
            .then(|| self.driver.term_at(purge).map(|t| (purge, t)))
            .flatten();
        let conf_state = self.driver.conf_state();
        let applied_hash = self
            .consistency
            .head()
            .filter(|&(at, _)| at == index)
            .map(|(_, h)| h);
        let view = self.sm.snapshot();
        self.snapshots.taking = true;
        debug!(index, ?purge_to, "taking snapshot");
        let job = SnapshotJob {
            membership: self.membership.clone(),
            applied_hash,
            storage: self.storage.clone(),
            index,
            term,
            conf_state,
            purge_to,
        };
        let me = self.myself.clone();
        let threads = self.storage_spawn == StorageSpawn::Thread;
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = job.run(view, threads).await;
            let took = started.elapsed();
            if let Some(me) = me.upgrade() {
                let _ = me.tell(SnapshotDone { result, took }).await;
            }
        });
    }

    fn snapshot_done(&mut self, result: SnapshotOutcome, took: std::time::Duration) {
        self.snapshots.taking = false;
        match result {
            Ok((record, purge_to)) => {
                info!(index = record.index, bytes = record.size, "snapshot taken");
                let m = &self.metrics.consensus;
                m.snapshot_save_duration_seconds.observe(took.as_secs_f64());
                m.snapshot_size_bytes.observe(record.size as f64);
                let index = record.index;
                self.driver
                    .snapshot_taken(snapshot_meta(&record), purge_to.map_or(0, |p| p.0));
                self.snapshots.current = Some(record);
                for w in self.snapshots.waiters.drain(..) {
                    w.send(Ok(index));
                }
                self.publish(ClusterEvent::SnapshotTaken { index });
            }
            Err(e) => {
                warn!(error = %e, "snapshot failed");
                self.snapshots.fail_waiters(e);
            }
        }
    }

    /// Restores the state machine from a snapshot the leader sent and raft-rs accepted; returns
    /// its record for the persist batch.
    pub(super) fn install_snapshot(
        &mut self,
        meta: &SnapshotMetadata,
    ) -> Result<SnapshotRecord, FatalError> {
        let started = std::time::Instant::now();
        let record = self
            .snapshots
            .staged
            .remove(&(meta.index, meta.term))
            .ok_or_else(|| FatalError::Raft {
                reason: format!(
                    "raft accepted snapshot {} that was never received",
                    meta.index
                )
                .into(),
            })?;
        let mut reader = self
            .db
            .snapshot_reader(&record)
            .map_err(|e| FatalError::Storage(e.into()))?;
        let restore_err = |e: io::Error| match SnapshotReader::corruption(&e) {
            Some(c) => FatalError::Corruption(c.clone()),
            None => FatalError::Raft {
                reason: format!("restoring snapshot {}: {e}", record.index).into(),
            },
        };
        let header = restore_from(&mut reader, &mut self.sm).map_err(restore_err)?;
        self.set_membership(header.membership);
        self.consistency
            .reset(header.applied_hash.map(|h| (meta.index, h)));
        // raft-rs takes the applied index only once the snapshot is durable here
        // (`Snapshots::applied_when_persisted`); the state machine is there already.
        self.applied = meta.index;
        // Whether proposals at or below the snapshot were applied is not knowable from here.
        self.requests
            .proposals
            .fail_through(meta.index, || ProposeError::Interrupted);
        self.requests
            .proposals
            .fail_unplaced(|| ProposeError::Interrupted);
        self.requests
            .changes
            .fail_through(meta.index, || ProposeError::Interrupted);
        self.requests
            .changes
            .fail_unplaced(|| ProposeError::Interrupted);
        let stale: Vec<(u64, u64)> = self
            .snapshots
            .staged
            .range(..=(meta.index, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            if let Some(old) = self.snapshots.staged.remove(&key) {
                let _ = self.storage.tell(DiscardSnapshot { id: old.id }).try_send();
            }
        }
        self.snapshots.current = Some(record.clone());
        let took = started.elapsed().as_secs_f64();
        self.metrics
            .consensus
            .snapshot_install_duration_seconds
            .observe(took);
        info!(
            index = meta.index,
            bytes = record.size,
            "installed snapshot from the leader"
        );
        self.publish(ClusterEvent::SnapshotInstalled { index: meta.index });
        Ok(record)
    }

    /// raft-rs wants to send a snapshot: hand the current one's record to the peer's actor, which
    /// streams it on a stream of its own.
    pub(super) fn route_snapshot(&mut self, m: RaftMessage) {
        let to = m.to;
        match &self.snapshots.current {
            // raft-rs refuses a snapshot whose configuration does not hold the receiver (a node
            // that joined after it was taken): take a fresh one, which raft-rs sends when it
            // retries.
            Some(record) if !in_conf(&record.conf_state, to) => {
                debug!(
                    peer = to,
                    index = record.index,
                    "snapshot predates the peer; taking a new one"
                );
                self.start_snapshot();
                self.driver.report_snapshot(to, false);
            }
            Some(record) if record.index == m.get_snapshot().get_metadata().index => {
                let offer = Box::new(SnapshotOffer {
                    msg: m,
                    record: record.clone(),
                });
                self.replication.outbox.entry(to).or_default().snapshot = Some(offer);
            }
            _ => self.driver.report_snapshot(to, false),
        }
    }
}

/// Writing one captured state out and committing it.
struct SnapshotJob {
    /// The membership as of the captured state: it leads the snapshot's bytes.
    membership: Membership,
    /// The running hash of the entries applied up to `index`.
    applied_hash: Option<ApplyHash>,
    storage: ActorRef<StorageActor>,
    index: u64,
    term: u64,
    conf_state: raft::eraftpb::ConfState,
    purge_to: Option<(u64, u64)>,
}

type SnapshotOutcome = Result<(SnapshotRecord, Option<(u64, u64)>), SnapshotError>;

fn storage_err<M>(e: SendError<M, Arc<StorageError>>) -> SnapshotError {
    match e {
        SendError::HandlerError(e) => SnapshotError::Storage(e),
        _ => SnapshotError::ShuttingDown,
    }
}

impl SnapshotJob {
    /// The state machine writes its view on a blocking thread (`threads`), handing 1 MiB chunks
    /// through a two-chunk channel to this task, which stores them; so at most a few chunks are
    /// in memory. Without threads (a deterministic simulation on one thread) the view is written
    /// out first, then stored.
    async fn run<W: WriteSnapshot>(self, view: W, threads: bool) -> SnapshotOutcome {
        let id = self.storage.ask(NewSnapshotId).await.map_err(storage_err)?;
        // Bounded (two chunks) when a thread produces; a single-threaded run writes everything
        // out before storing any of it, so it cannot wait on itself.
        let (tx, rx) = if threads {
            flume::bounded::<(u32, Vec<u8>)>(2)
        } else {
            flume::unbounded()
        };
        let header = SnapshotHeader {
            membership: self.membership.clone(),
            applied_hash: self.applied_hash,
            has_state: true,
        };
        let produce = move || {
            let mut writer = SnapshotWriter::new(|no, bytes| {
                tx.send((no, bytes))
                    .map_err(|_| io::Error::other("snapshot store stopped"))
            });
            write_snapshot_header(&mut writer, &header)?;
            view.write_to(&mut writer).and_then(|()| writer.finish())
        };
        let (written, stored) = if threads {
            let producer = tokio::task::spawn_blocking(produce);
            let stored = self.store(id, &rx).await;
            let written = producer.await.unwrap_or_else(|e| {
                Err(io::Error::other(format!("snapshot writer panicked: {e}")))
            });
            (written, stored)
        } else {
            let written = produce();
            (written, self.store(id, &rx).await)
        };
        let (size, chunks, checksum) = match (written, stored) {
            (Ok(w), Ok(())) => w,
            (Err(e), _) => {
                let _ = self.storage.tell(DiscardSnapshot { id }).await;
                return Err(SnapshotError::StateMachine {
                    reason: e.to_string().into(),
                });
            }
            (_, Err(e)) => return Err(e),
        };
        let record = SnapshotRecord {
            id,
            index: self.index,
            term: self.term,
            conf_state: self.conf_state,
            size,
            chunks,
            checksum,
        };
        let current = self
            .storage
            .ask(CommitSnapshot {
                record: record.clone(),
                purge_to: self.purge_to,
            })
            .await
            .map_err(storage_err)?;
        if !current {
            return Err(SnapshotError::Superseded);
        }
        Ok((record, self.purge_to))
    }

    /// Stores chunks until the producer is done (its sender dropped).
    async fn store(
        &self,
        id: u64,
        rx: &flume::Receiver<(u32, Vec<u8>)>,
    ) -> Result<(), SnapshotError> {
        while let Ok((no, bytes)) = rx.recv_async().await {
            self.storage
                .ask(WriteChunk { id, no, bytes })
                .await
                .map_err(storage_err)?;
        }
        Ok(())
    }
}

/// The snapshot writer finished.
pub(crate) struct SnapshotDone {
    result: SnapshotOutcome,
    /// How long writing and storing it took.
    took: std::time::Duration,
}

impl<S: StateMachine> Message<SnapshotDone> for RaftActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: SnapshotDone, _: &mut Context<Self, ()>) {
        self.snapshot_done(msg.result, msg.took);
    }
}

/// Take a snapshot now; replies with its index once it is durable.
#[derive(Debug, Clone, Copy)]
pub struct TriggerSnapshot;

impl<S: StateMachine> Message<TriggerSnapshot> for RaftActor<S> {
    type Reply = DelegatedReply<Result<u64, SnapshotError>>;

    async fn handle(
        &mut self,
        _: TriggerSnapshot,
        ctx: &mut Context<Self, Self::Reply>,
    ) -> Self::Reply {
        let (delegated, reply) = ctx.reply_sender();
        let Some(reply) = reply else {
            return delegated;
        };
        if let Err(e) = self.check_running() {
            reply.send(Err(match e {
                ProposeError::Fatal(f) => SnapshotError::Fatal(f),
                _ => SnapshotError::ShuttingDown,
            }));
            return delegated;
        }
        if !self.snapshots.taking && self.applied <= self.snapshots.index() {
            // Nothing applied since the last one: it is already the snapshot asked for.
            reply.send(Ok(self.snapshots.index()));
            return delegated;
        }
        self.snapshots.waiters.push(reply);
        self.start_snapshot();
        delegated
    }
}

impl<S: StateMachine> Message<SnapshotReceived> for RaftActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: SnapshotReceived, _: &mut Context<Self, ()>) {
        if self.check_running().is_err() {
            let _ = self
                .storage
                .tell(DiscardSnapshot { id: msg.record.id })
                .try_send();
            return;
        }
        let key = (msg.record.index, msg.record.term);
        if let Some(old) = self.snapshots.staged.insert(key, msg.record) {
            let _ = self.storage.tell(DiscardSnapshot { id: old.id }).try_send();
        }
        while self.snapshots.staged.len() > MAX_STAGED {
            if let Some((_, old)) = self.snapshots.staged.pop_first() {
                let _ = self.storage.tell(DiscardSnapshot { id: old.id }).try_send();
            }
        }
        if let Err(e) = self.driver.step(msg.msg) {
            debug!(from = msg.from, error = %e, "snapshot message ignored");
        }
    }
}

impl<S: StateMachine> Message<SnapshotSent> for RaftActor<S> {
    type Reply = ();

    async fn handle(&mut self, msg: SnapshotSent, _: &mut Context<Self, ()>) {
        if let Some(c) = msg.corruption {
            // Our own snapshot is damaged: sending it again would fail the same way.
            self.fail(FatalError::Corruption(c));
            return;
        }
        self.driver.report_snapshot(msg.peer, msg.delivered);
    }
}
